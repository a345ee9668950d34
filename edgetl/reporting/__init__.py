"""The run's HTML report, its plots and the misclassified-example gallery."""
