"""What a search leaves behind and how it reads: the typed search results (``results.json``) and
the Pareto front with its table and plot. Not stages: the search, the report, the API and the
benchmark all read them. This layer sits between ``runtime`` and ``stages``.
"""
