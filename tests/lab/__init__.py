"""The network-namespace lab: public hosts, RFC 4787 NATs, CGNAT and WireGuard on one machine."""

from .nat import NatType
from .netns import LabError
from .topology import Host, Lab, Node, Router
from .udp import Reflector, UdpSocket

__all__ = ["Host", "Lab", "LabError", "NatType", "Node", "Reflector", "Router", "UdpSocket"]
