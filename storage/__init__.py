"""hvsim's storage half: VHD images and chains, LVM, XenServer SR/VDI/VBD/PBD, blkif rings."""
