"""Looking at nets: summary, timing, drawing, training curves, gradient checks."""
