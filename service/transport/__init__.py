"""HTTP machinery that knows no model: connections, the direct lane, the fast path, middleware.

Imports only ``service.platform``. It knows the application through the interface it declares
(``service.transport.direct_lane.LaneHandler``), which ``service.bento_service`` wires up.
"""
