"""What stands between the visitor and the origin: the trust boundary (Host, paths, request headers), the
server connections (deadlines, caps), and later the streaming proxy and its upstream client."""
