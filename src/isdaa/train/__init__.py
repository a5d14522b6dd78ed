"""The training engine: `isdaa.train.engine.run(cfg, callbacks, ...)` trains SFT, reward-model and preference
runs on accelerate (loop.py and the tasks sft.py, rm.py, pref.py). It takes the callbacks built on it as given
and never imports the layers above it (evaluate, hub, lab, cli); `isdaa.api.train` is the front door that adds
the callbacks a config asks for (tests/test_layers.py keeps this true)."""
