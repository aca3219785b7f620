"""Everything that runs inside a hospital: ingest, de-identification, the site store,
local training and evaluation, and the Flower ClientApp."""
