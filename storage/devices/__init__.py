"""Block devices: the BlockDevice protocol and its plain implementations (files through RawIO,
memory disks).
"""
