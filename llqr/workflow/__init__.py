"""The workflow control plane: the matrix of surfaces and cells, the validator, the cost preview
(plan, cost, flops), cluster resources, and the job entry points the Snakemake rules call."""
