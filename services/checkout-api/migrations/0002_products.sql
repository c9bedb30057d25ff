-- checkout-api: the product catalog. Every unit price a cart or a Stripe Checkout charges comes
-- from here; clients name a product by `sku` (or a listed Stripe price by `stripe_price_id`).

CREATE TABLE products (
    sku                text PRIMARY KEY CHECK (sku ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$'),
    name               text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    unit_amount_cents  bigint      NOT NULL CHECK (unit_amount_cents BETWEEN 0 AND 99999999),
    -- The Stripe price (price_…) this product is sold as in `priceId` checkouts; at most one
    -- product per price.
    stripe_price_id    text UNIQUE CHECK (stripe_price_id ~ '^price_[A-Za-z0-9_]{1,249}$'),
    -- Inactive products stay listed for admins but cannot be bought.
    active             boolean     NOT NULL DEFAULT true,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
