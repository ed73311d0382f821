"""tmcore as a solver backend in mosaic (pasteurlabs/mosaic, PyPI ``mosaic-bench``).

``solver``      the two problems (SIMP heat conduction, SIMP linear elasticity on HEX8
                meshes) on tmcore's pipeline, in float64 torch, differentiable by autograd
``endpoints``   what a Tesseract's ``apply`` / ``vector_jacobian_product`` do with them
``schemas``     the Tesseracts' input and output schemas (mosaic's canonical ones + the SIMP parameters)
``tesseracts/`` one ``tesseract_api.py`` + ``tesseract_config.yaml`` per mosaic problem
``harness``     mosaic's own harness run in-process on them (the thin adapter)
``published``   the other solvers' numbers from mosaic 0.2.0's result pages
``report``      the markdown + netCDF report; ``run`` the command line

Only ``solver``, ``endpoints`` and ``schemas`` (with ``mosaic-bench``'s schemas) are needed to serve
the Tesseracts; the rest needs ``mosaic-bench`` and ``tesseract-core`` (docs/mosaic.md).
"""
