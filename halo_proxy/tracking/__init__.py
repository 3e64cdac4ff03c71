"""Pure tracking logic: request facts in, decisions out. No I/O."""
