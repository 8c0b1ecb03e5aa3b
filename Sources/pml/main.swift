import PMLCLI
