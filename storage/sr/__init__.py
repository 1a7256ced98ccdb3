"""Storage repositories: SR/VDI/VBD/PBD and the SR types (file, lvm, lvhd) registered as plug-ins.

"""
