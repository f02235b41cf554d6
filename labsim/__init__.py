"""The simulated laboratory: instruments on loopback for the demo and the tests.

Public API::

    Lab, ALL_INSTRUMENTS                 the whole lab (labsim.lab)
    Instrument, Credentials              descriptions (labsim.model)
    OpenSSHInstrument, openssh_available real sshd analyzer PC (labsim.sshd)
    AnalyzerServer, AnalyzerSettings     asyncssh instrument (labsim.analyzer)
    Hl7Service, RfbService, AstmService, EchoService   TCP ports (labsim.services)
    BackgroundLoop                       host async instruments for blocking code
    XvncDesktop, XrdpDesktop             real VNC and RDP desktops (labsim.desktop, labsim.rdp)
    render_allowlist_toml                gateway allowlist snippet
    fingerprint_of                       OpenSSH SHA256 fingerprint of a key line
    LabsimError, InstrumentStartError, ProtocolError
"""

from labsim.allowlist import render_allowlist_toml
from labsim.analyzer import AnalyzerServer, AnalyzerSettings
from labsim.background import BackgroundLoop
from labsim.errors import InstrumentStartError, LabsimError, ProtocolError
from labsim.keys import fingerprint_of
from labsim.lab import ALL_INSTRUMENTS, Lab
from labsim.model import Credentials, Instrument
from labsim.services import AstmService, EchoService, Hl7Service, RfbService
from labsim.sshd import OpenSSHInstrument, openssh_available

__all__ = [
    "ALL_INSTRUMENTS",
    "AnalyzerServer",
    "AnalyzerSettings",
    "AstmService",
    "BackgroundLoop",
    "Credentials",
    "EchoService",
    "Hl7Service",
    "Instrument",
    "InstrumentStartError",
    "Lab",
    "LabsimError",
    "OpenSSHInstrument",
    "ProtocolError",
    "RfbService",
    "fingerprint_of",
    "openssh_available",
    "render_allowlist_toml",
]
