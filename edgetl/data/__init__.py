"""Reading datasets and the small sample sets the demo and tests make."""
