"""Values of flux-core's constants (``flux.constants``) that this library uses.

Kept here so that neither the authoring API nor the in-memory broker needs
flux-core's compiled bindings to be imported; tests/test_surface.py checks
the values against flux-core's when it is installed.
"""

FLUX_MSGTYPE_REQUEST = 0x01
FLUX_MSGTYPE_RESPONSE = 0x02
FLUX_MSGTYPE_EVENT = 0x04
FLUX_MSGTYPE_CONTROL = 0x08
FLUX_MSGTYPE_ANY = 0x0F

FLUX_ROLE_NONE = 0
FLUX_ROLE_OWNER = 0x1
FLUX_ROLE_USER = 0x2
FLUX_ROLE_LOCAL = 0x4
FLUX_ROLE_ALL = 0xFFFFFFFF

FLUX_RPC_NORESPONSE = 1
FLUX_RPC_STREAMING = 2

FLUX_NODEID_ANY = 0xFFFFFFFF
FLUX_NODEID_UPSTREAM = 0xFFFFFFFE
FLUX_MATCHTAG_NONE = 0

FLUX_POLLIN = 1
FLUX_POLLOUT = 2
FLUX_POLLERR = 4
