"""The WSGI layer: what sits between a WSGI server and the models.

- middleware.py: raindrops.Middleware, requests in flight across all workers,
  and its statistics endpoint;
- last_data_recv.py: raindrops.LastDataRecv, how long requests waited in the
  listen queue;
- http.py: what every raindrops endpoint shares (who may ask, which format,
  how to answer).
"""
