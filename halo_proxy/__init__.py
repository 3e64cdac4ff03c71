"""HaloTrack: a consent-aware server-side attribution reverse proxy."""

__version__ = "0.1.0"
