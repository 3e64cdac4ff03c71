"""HaloTrack's own routes under the reserved prefix, one module per route family: request parsing and answers
only (rules live in `tracking/`, SQL in `storage/`). `common` is what every route shares: the error shape,
bounded body reading and decoding, JSON; `forms` parses form bodies."""
