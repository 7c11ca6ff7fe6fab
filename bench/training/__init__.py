"""Training commands (`bench train <name>`): one module per model, each with a library function and a click `cli`."""
