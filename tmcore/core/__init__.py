"""The core layer: meshes, elements, assembly, sparse linear algebra, condensation, errors.

Everything above it (forms, methods, topology, studies) is built from these pieces; the core
imports nothing from those layers.
"""
