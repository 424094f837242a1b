"""pygeoapi provider plugins of the OpenCDMS API (named by dotted path in the generated configuration)."""
