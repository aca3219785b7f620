"""Statistics and evidence from site aggregates: metrics with intervals, acceptance, the
evidence bundle. Pure functions over data; never imports Flower or torch."""
