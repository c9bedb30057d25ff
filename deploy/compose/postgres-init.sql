-- One database per service that owns data (docker-compose only; make run creates them itself).
CREATE DATABASE campaign;
CREATE DATABASE checkout;
CREATE DATABASE webhooks;
CREATE DATABASE usage;
