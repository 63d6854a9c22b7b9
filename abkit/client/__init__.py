"""Python clients of the assignment service.

* :class:`Client` asks the server for every assignment (one gRPC call each);
* :class:`LocalClient` assigns in the caller's process from a config the server streams, and
  sends exposures and events in the background.

Both have one surface and never throw on evaluation: on any failure the caller's default model
version comes back with reason ``ERROR``.
"""

from abkit.client.common import AttributeValue, ClientAssignment, TrackEvent
from abkit.client.local import LocalClient, LocalClientStatus
from abkit.client.remote import Client

__all__ = [
    "AttributeValue",
    "Client",
    "ClientAssignment",
    "LocalClient",
    "LocalClientStatus",
    "TrackEvent",
]
