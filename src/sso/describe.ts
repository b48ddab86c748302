import type { OperatorTicket } from './ticket.js';

/** A ticket's roles for people: "system-admin, tenant-admin of city-a, restore of city-c". */
export function describeRoles(t: Pick<OperatorTicket, 'tenants' | 'systemAdmin'>): string {
  const roles = Object.entries(t.tenants).map(([tenant, role]) => `${role} of ${tenant}`);
  if (t.systemAdmin) roles.unshift('system-admin');
  return roles.join(', ') || 'no roles';
}
