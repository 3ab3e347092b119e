"""EPICS: the record plan and STATUS/alarm names (:mod:`~iocmng.epics.plan`, pure), the
record-backend protocol (:mod:`~iocmng.epics.backend`), the softioc bridge
(:mod:`~iocmng.epics.ioc`, the only softioc importer), access security, .bob
displays, CA/PVA clients, devices, ChannelFinder."""
