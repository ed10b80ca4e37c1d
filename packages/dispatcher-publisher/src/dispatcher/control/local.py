"""Control over a service's local unix socket (``brokers.socket``): no database involved.

The functions live with the socket broker's publishing side, :mod:`dispatcher.publish.socket`.
"""

from dispatcher.publish.socket import asocket_request, socket_request

__all__ = ["asocket_request", "socket_request"]
