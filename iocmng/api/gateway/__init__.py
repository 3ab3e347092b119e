"""The PV gateway: read, write and monitor PVs over HTTP (CA or PVA)."""
