"""Scale: scaling-law sweeps and fits (`sweep`, `fit`), emergence and calibration vs size (`emergence`), and the
`genforge plan` memory/time planner (`plan`). FSDP2 for models that outgrow one device is `genforge.train.fsdp`."""
