"""TCP services standing in for vendor maintenance ports.

- `Hl7Service`  HL7 v2 over MLLP, the analyzer/LIS host interface (ACKs, size limits)
- `RfbService`  a VNC-like remote screen (RFB 3.8 handshake, ServerInit, input events)
- `AstmService` an ASTM E1381/E1394 host port (ENQ/ACK, checksummed frames)
- `EchoService` a plain maintenance data port that echoes or discards (throughput tests)
"""

from labsim.services.astm import AstmService
from labsim.services.base import TcpService
from labsim.services.echo import EchoService
from labsim.services.hl7 import Hl7Service, build_ack, parse_msh
from labsim.services.rfb import RfbService

__all__ = [
    "AstmService",
    "EchoService",
    "Hl7Service",
    "RfbService",
    "TcpService",
    "build_ack",
    "parse_msh",
]
