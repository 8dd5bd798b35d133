"""The paper's tables and figures regenerated from the evaluation's metrics files.

``collect`` reads the metrics, ``tables`` and ``figures`` build Tables 1-2 and Figs. 5 and 8,
``overlays`` draws Figs. 6-7 from the trained models, ``paper`` holds the paper's figures.
"""
