"""Results of many runs side by side with the paper's: finding jobs, laying out the paper's tables, reports."""
