"""L1: what boxes and images are, as data: the spec, the image record, results and shared
defaults. Imports only the kernel layer, errors and units."""
