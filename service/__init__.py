"""The HTTP service: ONNX Runtime models from model_store/, batched, behind BentoML.

``bentoml serve`` finds the service class through bentofile.yaml (``service:ModelService``).
"""


def __getattr__(name: str):  # imported lazily: the submodules are usable without BentoML
    if name == "ModelService":
        from service.bento_service import ModelService

        return ModelService
    raise AttributeError(name)
