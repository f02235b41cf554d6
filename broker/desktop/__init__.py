"""Desktop sessions (VNC, RDP) in the browser: the broker as the instrument's client,
recorded or refused.

:mod:`broker.desktop.rfb` speaks and frames RFB, :mod:`broker.desktop.rdpclient`
speaks RDP (aardwolf, fenced), :mod:`broker.desktop.rdpbridge` serves an RDP screen
as RFB, :mod:`broker.desktop.pins` pins RDP certificates,
:mod:`broker.desktop.recording` writes what the engineer saw,
:mod:`broker.desktop.session` opens a session inside a grant and runs it as a live
session.  The console's WebSocket and player pages are :mod:`broker.console.desktop`.
"""
