"""What sites and coordinator must agree on: the task.

The model factory, the preprocessing, the labels.csv schema and the keys of the records
that cross the wire. Both `site_client` and `server` import this package; nothing here
touches a site's data or the network.
"""
