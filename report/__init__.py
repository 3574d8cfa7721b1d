"""The run report: data assembled from the artifact store, Markdown tables, matplotlib plots, interval statistics."""
