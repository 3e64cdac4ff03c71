"""Ad-platform forwarders: conversions in, HTTP requests out, responses classified."""
