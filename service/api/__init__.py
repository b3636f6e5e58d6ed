"""The application: the routes, the one task handler, the Open Inference Protocol, request bodies.

Built on ``service.transport`` (the app class, middleware, the direct lane's interface) and
``service.inference`` (the pipelines behind each route).
"""
