from iocmng import DeclarativeTask


class MyInterlock(DeclarativeTask):
    pass
