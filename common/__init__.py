"""Code both sides import: settings, the queue/task contract, the job store and storage.

Nothing in this package may import torch, ultralytics or cv2: the API process
imports it and must stay light.
"""
