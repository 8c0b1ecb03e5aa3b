import PMLCLI

PML.runMain()
