"""Reading the user's data: layouts, labels and masks, the built-in synthetic data, prepare and split."""
