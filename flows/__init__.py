"""flows: the workflow layer around tmcore (figures, cached tasks, deployments).

``python -m flows.figures_script`` renders the differentiability figures (the command
behind ``make figures``).
"""
