"""Training: one engine (engine.fit: loop; steps: EP / BPTT / backprop; optim: groups, optimizer,
scheduler; checkpoint: format, atomic write, resume check; metrics + curves: outputs; interrupt:
Ctrl-C; evaluation) and its thin entry points (train_crnn.train, train_preset.train_vgg,
teacher.train_teacher), with presets, config and κ schedules."""
