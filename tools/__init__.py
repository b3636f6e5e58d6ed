"""Project tools that are not part of the service: ``python -m tools.reference`` writes the
reference pages of docs/ from the code."""
