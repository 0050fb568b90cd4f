"""What a VBAzure service account may be for: the values `VEEAM_PURPOSES` is checked against
(configuration) and sent as (the appliance client)."""

from __future__ import annotations

#: Every ``AzureAccountPurpose`` value of the VBAzure v8 / v8.1 REST API (confirmed against
#: the published v8 reference, "Get Collection of Service Accounts", and a client generated
#: from the v8.1 OpenAPI document).
AZURE_ACCOUNT_PURPOSES = frozenset(
    {
        "None",
        "WorkerManagement",
        "Repository",
        "Unknown",
        "VirtualMachineBackup",
        "VirtualMachineRestore",
        "AzureSqlBackup",
        "AzureSqlRestore",
        "AzureFiles",
        "VnetBackup",
        "VnetRestore",
        "CosmosBackup",
        "CosmosRestore",
    }
)

#: What a service account created by the bot is for: backup and restore of every workload
#: VBAzure protects, plus repository management. ``WorkerManagement`` is left out on purpose
#: (the appliance designates one worker-management account through its own endpoint), as
#: are the placeholders ``None`` and ``Unknown``. The values are the real enum members (see
#: ``AZURE_ACCOUNT_PURPOSES``); the choice of subset is the bot's.
DEFAULT_PURPOSES: tuple[str, ...] = (
    "VirtualMachineBackup",
    "VirtualMachineRestore",
    "AzureSqlBackup",
    "AzureSqlRestore",
    "AzureFiles",
    "VnetBackup",
    "VnetRestore",
    "CosmosBackup",
    "CosmosRestore",
    "Repository",
)
