"""The workbench's apps (data entry, QC review, explorer, administration): what people see.

Each app is a thin page over the kernel: it reads through the catalog and the kernel's queries
and writes through the kernel's functions (audited, with the user from the settings).  Served
inside each user's hub server, and standalone for development (``panel serve apps/<app>.py``,
``voila apps/data_entry.ipynb``)."""
