export { blameOf, UpstreamConnector, type Blame, type Target, type TunnelRequest, type UpstreamAttempt, type UpstreamOptions } from './connector';
export { ClientAddressDelivery, DELIVERY_ROUTING, type DeliveryStatus } from './delivery';
