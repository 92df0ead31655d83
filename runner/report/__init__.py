"""A run's report beyond the markdown: charts (PNG and SVG) and the self-contained table.html."""
