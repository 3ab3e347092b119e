"""EPICS: the softioc bridge and record plan (:mod:`~iocmng.epics.ioc`, the only
softioc importer), access security, .bob displays, CA/PVA clients, devices,
ChannelFinder."""
