"""The use cases behind HaloTrack's routes (conversions; later visits, privacy, reporting): plain facts in,
results out. They call `tracking/` for decisions and `storage/` for rows, and never import `aiohttp.web`."""
